"""kdnas' experiments: each module runs one protocol of docs/evidence/ (or one benchmark) and
writes its raw results and page to reports/, run as ``python -m benchmarks.NAME``. They share
:mod:`benchmarks.common` and the product's public names; the product never imports them."""
