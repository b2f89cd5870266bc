"""The run directory on disk: file systems (local, remote), the record (keras_best.json) and its
history, the journal, the lock, the background writer and the host-memory pool."""
