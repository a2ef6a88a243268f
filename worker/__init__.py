"""The arq worker: runs generations against the provider and publishes their events onto Redis streams."""
