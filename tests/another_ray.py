"""Another Ray instance on this machine, as a user's other work would start (for tests only).

    python tests/another_ray.py

Prints ``up`` once Ray has started; on SIGTERM it shuts its Ray down and exits.
"""

import signal
import sys
import time

import ray

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit runs ray.shutdown
ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=1)
print("up", flush=True)
while True:
    time.sleep(1)
