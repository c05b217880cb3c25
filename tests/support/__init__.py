"""What the tests and the benches share: fake clocks, the fake Genesys, SDK-model builders, the app's test settings,
databases, the real service as a subprocess, and hostile-input generators. conftest.py holds only fixtures."""
