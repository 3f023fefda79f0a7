"""Using a trained model: the predictor, the REST service and web page, batch scoring, a local service process."""
