//! The archive as SQL tables: one DataFusion `ListingTable` per signal over
//! the hive layout, readable with no instance running.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::TableScopedPath;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use super::Archive;
use crate::ingest::Signal;

impl Archive {
    /// Registers the storage with `ctx` and the archived tables as `spans`,
    /// `logs` and `metrics`.
    pub async fn register(&self, ctx: &SessionContext) -> datafusion::error::Result<()> {
        self.register_as(ctx, |table| table.to_owned()).await
    }

    /// Registers the storage with `ctx` and each archived table under
    /// `name(table)`, e.g. `archive_spans` next to the live `spans`. Each
    /// has the live table's columns, then `date` (`YYYY-MM-DD`) and `hour`
    /// (`HH`), both UTC text from the path: `WHERE date = '2024-05-01'`
    /// reads only that day's files. Tables without files are empty.
    pub async fn register_as(
        &self,
        ctx: &SessionContext,
        name: impl Fn(&str) -> String,
    ) -> datafusion::error::Result<()> {
        // A local folder's store is rooted at the folder, while its URL is
        // the folder's `file://` path: DataFusion needs a store rooted at `/`.
        let store: Arc<dyn ObjectStore> = if self.storage.is_local() {
            Arc::new(LocalFileSystem::new())
        } else {
            self.storage.object_store().clone()
        };
        ctx.register_object_store(self.storage.url(), store);
        for signal in Signal::ALL {
            let url = self.table_url(signal)?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet")
                .with_table_partition_cols(vec![
                    ("date".to_owned(), DataType::Utf8),
                    ("hour".to_owned(), DataType::Utf8),
                ]);
            let config = ListingTableConfig::new(url.clone())
                .with_listing_options(options)
                .with_schema(signal.schema());
            let table = ArchiveTable {
                inner: ListingTable::try_new(config)?,
                url,
            };
            ctx.register_table(name(signal.table()), Arc::new(table))?;
        }
        Ok(())
    }

    fn table_url(&self, signal: Signal) -> datafusion::error::Result<ListingTableUrl> {
        let path = self.table_path(signal);
        let base = self.storage.url();
        let url = if self.storage.is_local() {
            base.join(&format!("{path}/"))
        } else {
            url::Url::parse(&format!("{}://{}/{path}/", base.scheme(), base.authority()))
        };
        let url = url.map_err(|e| {
            datafusion::error::DataFusionError::Configuration(format!(
                "cannot make a URL of archive table {path}: {e}"
            ))
        })?;
        ListingTableUrl::parse(url.as_str())
    }
}

/// An archived table as DataFusion sees it: a [`ListingTable`] that lists
/// its files again at every scan. DataFusion caches listings for the life
/// of a session by default, which would hide new files and keep deleted ones.
#[derive(Debug)]
struct ArchiveTable {
    inner: ListingTable,
    url: ListingTableUrl,
}

impl ArchiveTable {
    fn forget_listing(&self, state: &dyn Session) {
        if let Some(cache) = state.runtime_env().cache_manager.get_list_files_cache() {
            cache.remove(&TableScopedPath {
                table: self.url.get_table_ref().clone(),
                path: self.url.prefix().clone(),
            });
        }
    }
}

#[async_trait]
impl TableProvider for ArchiveTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.forget_listing(state);
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> datafusion::error::Result<ScanResult> {
        self.forget_listing(state);
        self.inner.scan_with_args(state, args).await
    }
}
