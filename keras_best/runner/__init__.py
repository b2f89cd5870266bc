"""The run executor: carries out the core's plans in one run directory (lock, recovery, resume,
transactions, rollback), on one worker or many (chief rules, agreement), and watches preemption signals."""
