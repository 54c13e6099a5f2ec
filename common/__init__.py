"""Flower-free libraries of FedSeal: watermark codec, seals, keys, models, data, records, CLI."""
