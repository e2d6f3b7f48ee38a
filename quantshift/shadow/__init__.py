"""Strategy versions side by side: active, canary and shadow, and promotion between them.

* :mod:`.versions` — the configuration of a strategy's versions, its rules, and the
  run-time registry (promote, rollback, persistence);
* :mod:`.routing` — which symbols the canary trades (deterministic, by SHA-256 bucket);
* :mod:`.adaptive` — the opt-in Thompson-sampling proposal of the canary's share (numpy);
* :mod:`.promotion` — champion/challenger statistics and the promotion decision
  (numpy, scipy).

Only the first two are imported here: numpy and scipy cost tens of MB of RSS and most of
a second at start-up, so whoever needs the statistics imports those modules by name.
Nothing in this package does I/O or reads the clock.
"""

from quantshift.shadow.routing import CanaryRouter, canary_bucket, routes_to_canary
from quantshift.shadow.versions import (
    StrategyVersions,
    VersionChange,
    VersionError,
    VersionRegistry,
    VersionSpec,
    VersionStatus,
    validate_versions,
)

__all__ = [
    "CanaryRouter",
    "StrategyVersions",
    "VersionChange",
    "VersionError",
    "VersionRegistry",
    "VersionSpec",
    "VersionStatus",
    "canary_bucket",
    "routes_to_canary",
    "validate_versions",
]
