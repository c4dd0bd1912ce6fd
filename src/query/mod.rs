//! SQL over the live tables: one DataFusion session that sees the store's
//! tables, read-only, under a memory limit and a timeout.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_json::writer::{EncoderOptions, make_encoder};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};

use crate::store::{Store, StoreTable};

/// Limits of the query engine.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Memory a query may use for sorts, joins and aggregations.
    pub memory_limit: usize,
    /// Rows returned at most; a longer result is cut and flagged `truncated`.
    pub max_rows: usize,
    /// Time a query may run.
    pub timeout: Duration,
    /// Arrow bytes an answer may hold.
    pub max_result_bytes: usize,
}

/// Why an offline query engine could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot read the storage: {0}")]
    Storage(String),
    #[error("cannot set up the query engine: {0}")]
    Engine(#[from] DataFusionError),
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query is wrong: syntax, unknown column, a failed cast, too much memory.
    #[error("{0}")]
    User(DataFusionError),
    /// The query ran out of time.
    #[error("query exceeded its timeout of {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The answer is larger than `[query] max_result_bytes`.
    #[error(
        "the answer holds more than {0} bytes ([query] max_result_bytes): select fewer columns or rows"
    )]
    TooLarge(bytesize::ByteSize),
    /// The engine failed, not the query.
    #[error("{0}")]
    Internal(DataFusionError),
}

impl QueryError {
    fn from_datafusion(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::Internal(_)
            | DataFusionError::IoError(_)
            | DataFusionError::ObjectStore(_) => QueryError::Internal(e),
            _ => QueryError::User(e),
        }
    }
}

/// A query's answer.
#[derive(Debug)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Whether rows past `max_rows` were left out.
    pub truncated: bool,
}

impl QueryResult {
    /// `{"columns": [names], "types": [arrow types], "rows": [[values]],
    /// "truncated": bool}`, values encoded as arrow-json encodes them
    /// (timestamps as RFC 3339 text, maps as objects, lists as arrays).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(b"{\"columns\":");
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        serde_json::to_writer(&mut out, &names).expect("writing to a Vec cannot fail");
        out.extend_from_slice(b",\"types\":");
        let types: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        serde_json::to_writer(&mut out, &types).expect("writing to a Vec cannot fail");
        out.extend_from_slice(b",\"rows\":[");
        let options = EncoderOptions::default();
        let mut first_row = true;
        for batch in &self.batches {
            let fields = batch.schema().fields().clone();
            let mut encoders: Vec<_> = fields
                .iter()
                .zip(batch.columns())
                .map(|(f, c)| make_encoder(f, c.as_ref(), &options))
                .collect::<Result<_, _>>()
                .unwrap_or_default();
            if encoders.len() != fields.len() {
                // A type arrow-json cannot encode: fall back to display text.
                encoders.clear();
            }
            for row in 0..batch.num_rows() {
                if !first_row {
                    out.push(b',');
                }
                first_row = false;
                out.push(b'[');
                for (i, column) in batch.columns().iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match encoders.get_mut(i) {
                        Some(e) if e.is_null(row) => out.extend_from_slice(b"null"),
                        Some(e) => e.encode(row, &mut out),
                        None => {
                            let text = arrow::util::display::array_value_to_string(column, row)
                                .unwrap_or_default();
                            serde_json::to_writer(&mut out, &text)
                                .expect("writing to a Vec cannot fail");
                        }
                    }
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b"],\"truncated\":");
        out.extend_from_slice(if self.truncated { b"true" } else { b"false" });
        out.push(b'}');
        out
    }
}

/// The SQL engine over the store.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    options: QueryOptions,
}

impl QueryEngine {
    pub fn new(store: &Store, options: QueryOptions) -> Result<Self, DataFusionError> {
        let ctx = Self::context(&options)?;
        for table in store.tables() {
            ctx.register_table(table.name(), Arc::new(StoreTable::new(table.clone())))?;
        }
        crate::memory::tables::register(&ctx, store.memory_index())?;
        Ok(Self { ctx, options })
    }

    fn context(options: &QueryOptions) -> Result<SessionContext, DataFusionError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(options.memory_limit, 1.0)
            .build_arc()?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("homeostat", "public");
        Ok(SessionContext::new_with_config_rt(config, runtime))
    }

    /// SQL over what `storage` keeps, with no instance running: the
    /// archived `spans`, `logs` and `metrics` (with their `date` and `hour`
    /// partition columns) and the memory's `decisions` and `facts`.
    pub async fn offline(
        storage: &crate::memory::Storage,
        options: QueryOptions,
    ) -> Result<Self, OfflineError> {
        let ctx = Self::context(&options)?;
        let archive =
            crate::memory::archive::Archive::new(storage.clone(), "query", Default::default())
                .map_err(|e| OfflineError::Storage(e.to_string()))?;
        archive.register(&ctx).await?;
        let loaded = crate::memory::load(storage)
            .await
            .map_err(|e| OfflineError::Storage(e.to_string()))?;
        for p in &loaded.problems {
            tracing::warn!(problem = %p, "the memory does not verify (`homeostat audit verify`)");
        }
        let index = Arc::new(crate::memory::tables::MemoryIndex::default());
        for e in loaded.chains.values().flatten() {
            index.apply(&e.entry, &e.hash);
        }
        crate::memory::tables::register(&ctx, &index)?;
        Ok(Self { ctx, options })
    }

    /// Runs one read-only statement.
    pub async fn sql(&self, sql: &str) -> Result<QueryResult, QueryError> {
        // No DDL, DML or SET: the API runs SQL from the network, and COPY or
        // CREATE EXTERNAL TABLE would read and write the host's files.
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let run = async {
            let df = self
                .ctx
                .sql_with_options(sql, read_only)
                .await
                .map_err(QueryError::from_datafusion)?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            // One row past the cap tells whether the result was cut.
            let df = df
                .limit(0, Some(self.options.max_rows + 1))
                .map_err(QueryError::from_datafusion)?;
            // Streamed, so that an answer past its byte limit stops there
            // instead of being held whole first.
            let mut stream = df
                .execute_stream()
                .await
                .map_err(QueryError::from_datafusion)?;
            let mut batches = Vec::new();
            let mut bytes = 0;
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                let batch = batch.map_err(QueryError::from_datafusion)?;
                bytes += batch.get_array_memory_size();
                if bytes > self.options.max_result_bytes {
                    return Err(QueryError::TooLarge(bytesize::ByteSize::b(
                        self.options.max_result_bytes as u64,
                    )));
                }
                batches.push(batch);
            }
            let truncated = truncate(&mut batches, self.options.max_rows);
            Ok(QueryResult {
                schema,
                batches,
                truncated,
            })
        };
        tokio::time::timeout(self.options.timeout, run)
            .await
            .map_err(|_| QueryError::Timeout(self.options.timeout))?
    }
}

/// Cuts `batches` to `max` rows; whether anything was cut.
fn truncate(batches: &mut Vec<RecordBatch>, max: usize) -> bool {
    let mut seen = 0;
    for i in 0..batches.len() {
        let n = batches[i].num_rows();
        if seen + n > max {
            batches[i] = batches[i].slice(0, max - seen);
            batches.truncate(i + 1);
            return true;
        }
        seen += n;
    }
    false
}
