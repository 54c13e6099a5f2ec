"""A site's payload per secure mode: `he` (CKKS ciphertexts and the blinded decryption) and `masked`
(the SecAgg+ stages). `none` mode's sealed weights are built in client/app.py."""
