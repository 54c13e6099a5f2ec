"""FedSeal's Flower-free libraries, in packages by concern (none of them imports Flower, and only
`cli` and `launch` print):

- `integrity`: the fragile watermark, seals, keys, certificates;
- `secure`: secure aggregation: the CKKS codec and SEAL's format, masking, SecAgg+, secret shares;
- `learning`: data, models, training, differential privacy;
- `run`: a run's settings, records, report, stages, fault injection, model files;
- `cli`: the `fedseal` command, one module per command group;
- `launch`: the launchers that start both sides (simulation, local deployment) as processes;
- `bench`: benchmarks that print figures.

`task` is the public face of the task interface (`from common.task import Task, SiteInfo`).
`errors`, `wire`, `kdf` (round keys and contexts) and `processes` are the small modules every
package may import.
"""
