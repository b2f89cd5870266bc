"""Storage engines, one per on-disk form: `.weights.h5`, the `.keras` archive, SavedModel exports.
Each writes a snapshot under a name, loads it back, and says whether it can write in the background."""
