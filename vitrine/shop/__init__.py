"""The shop's data: the contract (`contract`), its validation and canonical storage (`ingest`),
the synthetic default shop (`generate`) and the Amazon Reviews importer (`amazon`)."""
