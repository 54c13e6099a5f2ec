"""Secure aggregation: the CKKS codec on SEAL (`he`) and SEAL's serialized format (`he_serial`),
AES-CTR masking and quantization (`masking`), the SecAgg+ protocol (`secagg`) and Shamir secret
shares (`secret_shares`).

May import: `common.errors`, `common.kdf` (contexts, round keys), TenSEAL's
sealapi, `cryptography`, pycryptodome and numpy. Never Flower.
"""
