"""Added during the session once seeds 0-2 were queued: seed 3 of both arms at the budget drive.py chose
(the same run() as drive.py; started after drive.py finished, stopped at the session's end if unfinished)."""
import json
import sys

sys.path.insert(0, "/work/main/docs/results/ablation/round4")
import drive  # noqa: E402

budget = json.loads((drive.ROOT / "choices.json").read_text())["budget"]
for name in drive.ARMS:
    drive.run(name, "test", 3, budget)
print("seed 3 done", flush=True)
