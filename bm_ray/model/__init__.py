"""The model layer (starts no Ray, reads no corpus): presets and the model cache, the model directory,
tokenisation, the predictor engine, calibration and metrics. Shared by training, bulk jobs and Serve."""
