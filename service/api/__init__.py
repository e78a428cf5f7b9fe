"""The REST API under /v1: dependencies, one router per resource."""
