"""tests/viewer: OHIF over Orthanc in headless Chromium (prerequisites: tests/viewer/setup_viewer.sh)."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "viewer: opens results in a real viewer (OHIF + Orthanc + headless Chromium); never skipped"
    )
