# Sphinx configuration of Ekko's release notes (reno).
#
#   sphinx-build -W -b html releasenotes/source releasenotes/build/html

extensions = [
    'reno.sphinxext',
]

project = 'Ekko Release Notes'
copyright = '2026, Ekko contributors'

source_suffix = {'.rst': 'restructuredtext'}
master_doc = 'index'
exclude_patterns = []
pygments_style = 'sphinx'
html_theme = 'alabaster'
html_static_path = []
