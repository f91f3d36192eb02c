"""Added at the end of the session (2026-12-06, 19:00 UTC), after the two test arms of drive.py had been
scored and before any test number of this arm existed: full_batch_t10 (the examples pillar on top of hard
negatives + batch-wide soft labels) on the test sets, seed 0 then 1, so that the examples pillar has a
test-set number at 2B too. Same code, cache and settings as drive.py."""
import sys

sys.path.insert(0, "/work/exp13")
from drive import run  # noqa: E402

for seed in (0, 1):
    run("full_batch_t10", "test", seed)
print("extra done", flush=True)
