"""Integrations with search tools: Optuna (`StudyBest` in `optuna`, its per-trial tracker in
`optuna_trial`), KerasTuner (`SearchBest`), and the study-wide retention they share (`search`)."""
