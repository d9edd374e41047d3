"""Voice activity: the speech detector, its backends (WebRTC, Silero) and Silero's batching,
on the event loop or in a worker process."""
