"""Rich rendering of the sampler's events: live progress while a video is generated, a summary after.

The core emits small typed events (`engine.events.ForwardEvent`, `ChunkEmitted`) and never imports rich;
this module is the one place that draws them.

    with ProgressView(console) as view:            # two bars (chunks emitted, forward steps) + a live line
        result = generate(..., on_event=view)      # view(event) for each event
    console.print(summary_table(result.record, cache_config))

The live line of a forward reads `fwd 12/56  c3 ■ .011  c4 □ .004  c5 ■  KV 61k/73k tokens, 83%, 3.1 GiB`:
■ computed, □ reused, the number after it the chunk's accumulated distance (acc) after the decision; with a
budget in bytes the KV part reads `KV 3.1 GiB/8.0 GiB, 39% (61k/150k tokens)`.
On a console that is not a terminal (a log file, a CI job) nothing is animated: each forward's line is
printed as plain text instead, so the log keeps every decision.
"""
from __future__ import annotations

import resource
import sys

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from flowcache_core.cache.kv_memory import fmt_bytes
from flowcache_core.cache.settings import ResolvedCache
from flowcache_core.engine.events import ChunkEmitted, ForwardEvent, RunRecord

COMPUTED, REUSED = "■", "□"


# ------------------------------------------------------------------------------------------ formatting
def fmt_tokens(n: int) -> str:
    """768 -> '768', 2304 -> '2.3k', 61440 -> '61k', 2_500_000 -> '2.5M'."""
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    if n < 1_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1e6:.1f}M"


def kv_text(used: int, budget: int | None, nbytes: int | None = None, budget_bytes: int | None = None) -> str:
    """`KV 61k/73k tokens, 83%` with a budget, else `KV 12k tokens`; then `, 3.1 GiB` held when known. With a
    byte budget: `KV 3.1 GiB/8.0 GiB, 39% (61k/150k tokens)`."""
    if budget_bytes and nbytes is not None:
        return (f"KV {fmt_bytes(nbytes)}/{fmt_bytes(budget_bytes)}, {100 * nbytes / budget_bytes:.0f}% "
                f"({fmt_tokens(used)}/{fmt_tokens(budget or 0)} tokens)")
    held = f", {fmt_bytes(nbytes)}" if nbytes is not None else ""
    if budget:
        return f"KV {fmt_tokens(used)}/{fmt_tokens(budget)} tokens, {100 * used / budget:.0f}%{held}"
    return f"KV {fmt_tokens(used)} tokens{held}"


def forward_line(event: ForwardEvent) -> Text:
    """One forward as a line: which chunks were computed (■) or reused (□), their acc, the KV use."""
    line = Text()
    line.append(f"fwd {event.forward + 1}/{event.total_forwards} ", style="dim")
    for c in event.chunks:
        line.append(f" c{c.id} ")
        computed = c.decision == "compute"
        line.append(COMPUTED if computed else REUSED, style="green" if computed else "yellow")
        if c.acc is not None:
            line.append(f" {c.acc:.3f}".replace(" 0.", " ."), style="dim")
    line.append(f"   {kv_text(event.kv_used, event.kv_budget, event.kv_bytes, event.kv_budget_bytes)}", style="cyan")
    return line


# ------------------------------------------------------------------------------------------ live view
class ProgressView:
    """A context manager that draws the events it is called with (`view(event)`).

    On a terminal: one `Live` holding a `Progress` with two bars (chunks emitted, forward steps) and the
    latest forward's line under them. Elsewhere: one plain line per forward. `enabled=False` draws nothing
    (`--quiet`). Totals come from the events themselves (`total_forwards`, `ChunkEmitted.total`).
    """

    def __init__(self, console: Console | None = None, *, enabled: bool = True, live: bool | None = None,
                 transient: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.live_mode = self.console.is_terminal if live is None else live
        self.progress = Progress(
            TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, auto_refresh=False,
        )  # fmt: skip
        self._chunks = self.progress.add_task("chunks", total=None, start=False)  # started by the first event
        self._forwards = self.progress.add_task("forwards", total=None, start=False)
        self._line = Text("")
        self._live: Live | None = None
        self._transient = transient
        self.events = 0

    def __rich__(self) -> Group:
        return Group(self.progress, self._line)

    def __enter__(self) -> "ProgressView":
        if self.enabled and self.live_mode:
            self._live = Live(self, console=self.console, refresh_per_second=8, transient=self._transient)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def __call__(self, event: object) -> None:
        if self.events == 0:
            self.progress.start_task(self._chunks)
            self.progress.start_task(self._forwards)
        self.events += 1
        if isinstance(event, ForwardEvent):
            self.progress.update(self._forwards, total=event.total_forwards, advance=1)
            self._line = forward_line(event)
            if self.enabled and not self.live_mode:
                self.console.print(self._line, soft_wrap=True, highlight=False)
        elif isinstance(event, ChunkEmitted):
            self.progress.update(self._chunks, total=event.total, completed=event.index + 1)
        if self._live is not None:
            self._live.refresh()


# ------------------------------------------------------------------------------------------ summary
def peak_memory(record: RunRecord) -> tuple[int, str]:
    """(bytes, what was measured): the GPU peak the run recorded, else this process's peak RSS."""
    if record.peak_memory_bytes:
        return record.peak_memory_bytes, "GPU peak allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process peak RSS"  # Linux reports KiB


def kv_memory_text(record: RunRecord, cache: ResolvedCache) -> str:
    """`1.2 MiB peak held by the KV store (budget 8.0 MiB, int8)`."""
    m = cache.memory
    notes = [f"budget {fmt_bytes(m.budget_bytes)}"] if m.kv_budget is not None else []
    notes += [f"stored as {m.kv_quant}"] if m.kv_quant != "none" else []
    return f"{fmt_bytes(record.kv_peak_bytes)} peak held by the KV store" + (f" ({', '.join(notes)})" if notes else "")


def summary_table(record: RunRecord, cache: ResolvedCache, reference_forwards: int | None = None,
                  wall_seconds: float | None = None) -> Table:
    """Per chunk computed/skipped forwards, totals, time, peak memory, speedup in chunk-forwards vs `none`.

    `reference_forwards`: the computed chunk-forwards of a `none` run to compare with; by default every
    chunk-forward of this run's plan (what `none` computes), i.e. `record.ideal_speedup`.
    """
    table = Table(title="forwards per chunk", title_justify="left")
    table.add_column("chunk", justify="right")
    table.add_column("computed", justify="right")
    table.add_column("skipped", justify="right")
    table.add_column("skipped %", justify="right")
    for cid in sorted(set(record.computed) | set(record.reused)):
        c, r = record.computed.get(cid, 0), record.reused.get(cid, 0)
        table.add_row(f"c{cid}", str(c), str(r), f"{100 * r / (c + r):.0f}%" if c + r else "-")
    total, computed = record.chunk_forwards, record.computed_chunk_forwards
    table.add_section()
    table.add_row("all", str(computed), str(total - computed),
                  f"{100 * (total - computed) / total:.0f}%" if total else "-", style="bold")

    ref = reference_forwards if reference_forwards is not None else total
    speedup = ref / computed if computed else 1.0
    mem, what = peak_memory(record)
    stats = Table.grid(padding=(0, 2))
    stats.add_column(style="bold")
    stats.add_column()
    for label, value in [
        ("cache", cache.describe()),
        ("forwards", f"{record.forwards} ({fmt_tokens(record.tokens_forwarded)} tokens through the DiT)"),
        ("sampling", f"{record.seconds:.2f} s"),
        *([("wall time", f"{wall_seconds:.2f} s (load, sample, decode, write)")] if wall_seconds is not None else []),
        *([("KV compressions", str(record.compressions))] if cache.budget_on else []),
        ("peak memory", f"{fmt_bytes(mem)} ({what})"),
        ("KV memory", kv_memory_text(record, cache)),
        ("speedup", f"{speedup:.2f}x in chunk-forwards vs none ({ref}/{computed})"),
    ]:  # fmt: skip
        stats.add_row(label, value)
    out = Table.grid()
    out.add_row(table)
    out.add_row(stats)
    return out
