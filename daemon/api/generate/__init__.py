"""/api/generate and /api/generate-batch with request_id continuation."""
