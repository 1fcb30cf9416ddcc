"""Helpers shared by the benchmark scripts, one job per module (not part of the xpcnn package).

The scripts run as ``python benchmarks/<name>.py``, which puts ``benchmarks/`` on ``sys.path``, so they
import this package as ``benchlib``.  Importing it (or any of its modules) changes nothing in the process:
thread-pool environment, malloc tuning and thread limits are applied by explicit calls
(:func:`benchlib.process.relaunch_with_thread_env`, :func:`benchlib.session.setup`).

==============  ==========================================================================================
module          job
==============  ==========================================================================================
``process``     process-wide settings: the thread-pool environment (by relaunching), malloc, thread limits
``options``     the command-line flags every script shares, and their derived defaults
``session``     the resolved run (:class:`Env`: backend, torch device, clocks) and :func:`setup`
``timing``      clocks, interleaved comparison, :class:`Stats` (median, min, IQR), ratios
``memory``      peak bytes allocated during one call, per library
``machine``     what explains a number: hardware, thread pools, versions, settings, load
``tables``      number formatting and plain-text tables
``results``     the JSON results file (atomic write)
``nets``        the benchmarked networks' convolutions, read from :mod:`xpcnn.models`
``data``        random inputs and the MNIST training set
``twins``       PyTorch twins of xpcnn models with the same weights
==============  ==========================================================================================
"""
