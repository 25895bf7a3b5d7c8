"""Tests of the admission webhook (webhook/): pure logic, and the server over real TLS."""
