"""What the test directories share (no tests here): `training` (TINY, run_train, reading a run),
`artgan` (a small ArtGAN download), `shards` (hand-made shard sets), `hub` and `hub_double` (the
recording Hub client), and the probes that stand in for train.py (`ddp_weights_probe.py`,
`fp16_cpu_probe.py`). Imported as `tests.support.<module>`; session fixtures are in tests/conftest.py."""
