"""The front ends over one executor: `BestWeightsTracker` (custom loops), `BestCheckpoint`
(`fit()`), `load_best`, and the metric readers and console reports they share."""
