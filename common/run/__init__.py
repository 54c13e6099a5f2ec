"""A run's records: its settings (`settings`), the run folder's files (`records`), the HTML report
(`report`), stage timings (`stages`), fault injection (`inject`) and model files (`modelio`).

May import: `common.errors`, `common.wire`, `common.learning` (data set names, DP specs) and
`common.integrity.watermark`. Never Flower.
"""
