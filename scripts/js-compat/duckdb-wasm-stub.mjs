// Stands in for @duckdb/duckdb-wasm, which only Mosaic's wasm connector uses (never here).
export {};
