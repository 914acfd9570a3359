"""Parity harness: official method implementations vs ganinvert's presets (issue #13); see README.md."""
