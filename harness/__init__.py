"""Helpers shared by the tests and the benchmarks (neither imports the other): starting and watching
server processes (procs), raw-socket clients (clients) and wrk load (wrk)."""
