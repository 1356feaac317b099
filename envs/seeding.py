"""How every env family seeds the envs of a DDP run. A leaf module: it imports nothing."""

RANK_SEED_STRIDE = 1_000_003  # distinct env seeds per DDP rank: rank r's envs start at seed + r·stride
