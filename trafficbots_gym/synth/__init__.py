"""Synthetic WOMD-like scenes and training corpora from SUMO simulations (``trafficbots-synth``).

Pipeline: ``networks`` (netgenerate + netconvert) -> ``demand`` (randomTrips + duarouter) ->
``simulate`` (libsumo at 10 Hz) -> ``roadmap`` (SUMO network -> map features) -> ``windows``
(91-step RawScenarios) -> ``trafficbots_gym.data.packing.pack_scenario``. ``generate`` streams
packed scenes, ``corpus`` stores long runs compactly and cuts windows on the fly.
"""
