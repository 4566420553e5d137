"""What a pod of a P/D deployment is: the pool it belongs to (`pool.py`) and how its vLLM
server is launched (`launch.py`)."""
