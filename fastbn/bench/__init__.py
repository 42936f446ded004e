"""fastbn.bench: time fastbn.BatchNorm2d against torch eager, torch.compile and copy_.

Run `python -m fastbn.bench --help`. One file per job: cases.py (the suite), contenders.py
(the providers), timing.py (interleaved timing), report.py (table, JSON/CSV, compare),
plot.py (PNG), machine.py (what it ran on), __main__.py (the command line).
"""
import os

# Inductor reads this when torch._inductor is first imported (not by `import torch`): one
# compile thread, no worker pool competing with the timed code on a small machine.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
