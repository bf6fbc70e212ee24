"""A simulated Venice server: the real server side of the E2EE protocol, for demos and tests.

Not canned bytes: the simulated enclave decrypts requests with its key, answers with a
deterministic "model", encrypts every streamed field to the client key, serves a structurally
valid attestation (synthetic TDX quote bound to its key and the caller's nonce, replayable event
log) and signs completed responses. Faults (:class:`Faults`) inject the failures a proxy must
survive. The synthetic quote carries no Intel signature, so DCAP must be stubbed against it.

Usage::

    state = SimulatorState(api_key="sk-test")
    app = create_simulator_app(state)          # base URL http://host:port/api/v1
    state.faults = Faults(cut_stream_after=3)  # at any time
"""

from proxy.simulator.app import create_simulator_app, run_simulator
from proxy.simulator.catalog import MODELS, SimModel, find_model
from proxy.simulator.faults import Faults
from proxy.simulator.http_errors import SimulatedHTTPError, SimulatedStreamCutError
from proxy.simulator.measurements import SIMULATED_MR_TD
from proxy.simulator.quote import SIMULATED_MR_SEAM
from proxy.simulator.signing import recover_address
from proxy.simulator.state import RecordedRequest, SimulatorState, StreamOutcome

# The simulated firmware and TDX module are not real releases: a proxy in front of the
# simulator adds these to attestation.extra_mrseam / extra_mrtd (the demo does, and says so).
SIMULATED_MEASUREMENTS = {"mrseam": SIMULATED_MR_SEAM.hex(), "mrtd": SIMULATED_MR_TD.hex()}

__all__ = [
    "MODELS",
    "SIMULATED_MEASUREMENTS",
    "Faults",
    "RecordedRequest",
    "SimModel",
    "SimulatedHTTPError",
    "SimulatedStreamCutError",
    "SimulatorState",
    "StreamOutcome",
    "create_simulator_app",
    "find_model",
    "recover_address",
    "run_simulator",
]
