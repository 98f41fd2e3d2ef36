# coordinator/store: the coordinator's durable state in SQLite.
drover_unit_test(test_store SOURCES test_store.c LIBS drover_coordinator LABELS unit)
