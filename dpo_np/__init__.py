"""dpo_np: Direct Preference Optimization from first principles, in NumPy.

The package mirrors Umar Jamil's lecture notes on DPO (CC BY-NC 4.0): each
section of the notes has a module, a test that proves its equations, and a
command or notebook that shows it. Importing the package loads NumPy and
nothing else; plotting, notebooks and the GPU backend load when used.
"""

__version__ = "0.1.0"
