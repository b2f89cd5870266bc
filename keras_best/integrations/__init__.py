"""Integrations with search tools: Optuna (`StudyBest`), KerasTuner (`SearchBest`), and the
study-wide retention they share (`search`)."""
