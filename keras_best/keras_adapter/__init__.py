"""The one place that touches Keras and TensorFlow internals (private attributes, `keras.src`):
weights layout capture, host copies of variables, optimizer and metric internals, EMA pairs, seeds."""
