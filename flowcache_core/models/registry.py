"""The one registry of model families: name -> family plugin. A new family is a folder beside magi1/ plus one
line here; a bundle's config.json names its family ("family"), other layouts are recognised by each family."""
from __future__ import annotations

from flowcache_core.models.causal_wan.family import CausalWanFamily
from flowcache_core.models.magi1.family import Magi1Family
from flowcache_core.models.skyreels_df.family import SkyReelsDFFamily

FAMILIES = {
    "magi1": Magi1Family(),
    "skyreels_df": SkyReelsDFFamily(),
    "causal_wan": CausalWanFamily(),
}
