"""What a vLLM engine's KV cache looks like from outside: the model's tokens (`tokenizer`),
how the engine names a block of them (`hashing`), and the events it publishes as it stores
and evicts blocks (`events`).

The simulated pod uses it to behave as vLLM does; the orchestrator uses it to read what real
and simulated pods report, and to name a prompt's blocks the way the engine will. Neither
side imports the other.
"""
