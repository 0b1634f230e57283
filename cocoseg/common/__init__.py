"""Layer 0, what every stage uses: the stage runner and its one-line endings (cli), typed params
(params, validation), errors, atomic file writes (io) and HTTP downloads (http)."""
