"""The pure core: options, the objective and monitor, the plan (policy), cadence and retention rules,
formats and run-directory names. No Keras, no I/O: every decision lives here, testable in microseconds."""
