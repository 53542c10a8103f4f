"""Run by tests/test_loop.py under torchrun (2 gloo ranks, FSDP2): the loop with the scripted engine."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import train  # noqa: E402
import loop_fakes  # noqa: E402
from loop_fakes import ScriptedEngine  # noqa: E402

if __name__ == "__main__":
    train.HFEngine = ScriptedEngine
    if os.environ.get("CANNED_FIRST"):          # only the first k canned generator responses (repeats certain)
        loop_fakes.CANNED = loop_fakes.CANNED[:int(os.environ["CANNED_FIRST"])]
    train.main(sys.argv[1:])
