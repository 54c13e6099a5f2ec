"""Integrity: the fragile watermark (`watermark`), seals on payloads (`seal`), the federation's keys
(`keys`), deployment certificates (`certs`) and each site's enrolment proof (`enrol`).

May import: `common.errors`, `common.kdf` and the standard library, `cryptography`, numpy and safetensors;
`keys` loads `common.secure.he` lazily to make the CKKS contexts. Never Flower.
"""
