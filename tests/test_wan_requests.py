"""What the Wan-based families share in handling a request (models/wan/requests.py), through each family:
--variant refused, a config file holding only the family's settings section, v2v's prefix video checked."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from flowcache_core.api import generate, resolve  # noqa: E402
from flowcache_core.errors import FlowcacheError  # noqa: E402
from flowcache_core.models.causal_wan import synthetic as causal_wan  # noqa: E402
from flowcache_core.models.skyreels_df import synthetic as skyreels_df  # noqa: E402

FAMILIES = {  # family -> (checkpoint writer, config file section, a setting in it, what error lines call it)
    "causal_wan": (causal_wan.write_checkpoint, "inference", {"sink_size": 0}, "a causal Wan checkpoint"),
    "skyreels_df": (skyreels_df.write_checkpoint, "pipeline_kwargs", {"ar_step": 0}, "a SkyReels-V2 DF checkpoint"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    write, section, setting, what = FAMILIES[request.param]
    return write(tmp_path_factory.mktemp(request.param) / "ckpt"), section, setting, what


def test_variant_is_refused(family):
    path, _, _, what = family
    with pytest.raises(FlowcacheError, match=rf"--variant '4.5B_distill' applies to MAGI-1 release directories only; "
                                             rf".* is {what}"):
        resolve("a cat", checkpoint_dir=path, variant="4.5B_distill")


def test_config_file_holds_the_settings_section_and_flowcache_only(family, tmp_path):
    path, section, setting, what = family
    good = tmp_path / "good.json"
    good.write_text(json.dumps({section: setting, "flowcache": {"cache_defaults": {"rel_l1_thresh": 0.05}}}))
    r = resolve("a cat", checkpoint_dir=path, config_file=good)
    (name, value), = setting.items()
    assert getattr(r.config.settings, name) == value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({section: setting, "runtime_config": {}}))
    with pytest.raises(FlowcacheError, match=rf"key 'runtime_config' unknown for {what} \(allowed: {section}, flowcache\)"):
        resolve("a cat", checkpoint_dir=path, config_file=bad)
    bad.write_text(json.dumps({section: {name: "zero"}}))
    with pytest.raises(FlowcacheError, match=name):
        resolve("a cat", checkpoint_dir=path, config_file=bad)


def test_v2v_needs_a_prefix_video_of_the_videos_size(family):
    path = family[0]
    kw = dict(checkpoint_dir=path, mode="v2v", height=32, width=32)
    with pytest.raises(FlowcacheError, match="v2v needs --prefix-video"):
        generate("a cat", **kw)
    with pytest.raises(FlowcacheError, match="prefix video is 48x32, the video is 32x32"):
        generate("a cat", prefix_video=np.zeros((5, 32, 48, 3), np.uint8), **kw)
