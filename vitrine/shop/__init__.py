"""The shop's data: what a shop brings, how it is checked, and where it is kept.

    contract   the data contract: pandera schemas ITEMS / EVENTS / USERS, EVENT_TYPES
    ingest     ingest(data, source, append=, merge=) -> IngestReport: validates, writes rejects/, stores the rest;
               ingest_live(data): the service's event spool, merged
    store      canonical storage under data/shop: read_items / read_events / read_users, EventWriter
    generate   generate_shop(data, spec): the synthetic default shop (DEMO, SCALE presets)
    render     the synthetic shop's product pictures
    amazon     import_amazon_reviews(data, reviews, meta, images): a real shop, Amazon Reviews 2018
    commands   `vitrine generate`, `vitrine import amazon-reviews`, `vitrine ingest`

Later stages read only `store` (and `contract` for names); they never read `incoming/`.
"""
