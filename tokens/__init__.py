"""Text to token ids and back, the held-out choice, the token store and the training windows cut
from it: the leaf that ingest (which writes tokens) and workers (which train on them) both
import. It imports nothing of crystalline's but ``crystalline.durable``."""
