"""Shared test helpers (no tests here); test modules import from here, never from each other.

authz          CAs (DevCA, RawCA for certificates no good CA issues), an mTLS grpc.aio server
pki            roots, intermediates and SVID leaves with exactly the property a chain test is about
chain_cost     the per-miss cost of federated chain re-verification across trees (`python -m`)
probe          handlers of every arity and kind behind an authorizer, and a client for them
nodes          node configs built in code
procs          a `meshnode` subprocess whose lines a test waits for; ports from ready lines
wait           eventually(): wait for what a test caused, with a safety-net timeout
logs           watch_logs(): wait for a log line an operator would read, as an event
workload_api   a Workload API server that pushes whatever a test hands it (also what no agent should)
services       services that `meshnode run` subprocesses load
netns          Linux network namespaces as test hosts
xds            the xDS scenario runner and its who-called-me server
xds_scenarios  xDS scenarios, one per process (`python -m tests.support.xds_scenarios`)
"""
