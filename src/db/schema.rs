//! Diesel table definitions shared by the MariaDB and SQLite migrations.
//! Written by hand: `diesel print-schema` maps types differently per backend.

diesel::table! {
    hosts (name) {
        name -> Text,
        version -> Text,
        capacity -> Integer,
        created_at -> Timestamp,
        heartbeat_at -> Timestamp,
    }
}

diesel::table! {
    instances (id) {
        id -> Text,
        project_id -> Text,
        host -> Text,
        name -> Text,
        status -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        last_seen_at -> Nullable<Timestamp>,
        contested_by -> Nullable<Text>,
        contested_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    disks (id) {
        id -> Text,
        instance_id -> Text,
        project_id -> Text,
        device -> Text,
        node_name -> Text,
        virtual_size -> BigInt,
        head_seq -> BigInt,
        bitmap_name -> Nullable<Text>,
        needs_full_read -> Bool,
        retired_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        last_seen_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    job_pins (job_id, disk_id, seq) {
        job_id -> Text,
        disk_id -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    policies (id) {
        id -> Text,
        project_id -> Text,
        name -> Text,
        description -> Text,
        schedule -> Nullable<Text>,
        timezone -> Text,
        keep_last -> Nullable<Integer>,
        keep_hourly -> Nullable<Integer>,
        keep_daily -> Nullable<Integer>,
        keep_weekly -> Nullable<Integer>,
        keep_monthly -> Nullable<Integer>,
        keep_yearly -> Nullable<Integer>,
        min_age_seconds -> BigInt,
        enabled -> Bool,
        next_run_at -> Nullable<Timestamp>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    policy_instances (instance_id) {
        instance_id -> Text,
        policy_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    schedule_runs (policy_id, scheduled_for) {
        policy_id -> Text,
        scheduled_for -> Timestamp,
        created_at -> Timestamp,
    }
}

diesel::table! {
    backups (id) {
        id -> Text,
        project_id -> Text,
        user_id -> Text,
        instance_id -> Text,
        policy_id -> Nullable<Text>,
        name -> Text,
        description -> Text,
        status -> Text,
        mode -> Text,
        kind -> Nullable<Text>,
        consistency -> Nullable<Text>,
        progress -> Integer,
        logical_bytes -> BigInt,
        read_bytes -> BigInt,
        new_bytes -> BigInt,
        stored_bytes -> BigInt,
        error -> Nullable<Text>,
        protected -> Bool,
        metadata -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        deleted_at -> Nullable<Timestamp>,
        checkpoint_name -> Nullable<Text>,
        checkpoint_xml -> Nullable<Text>,
    }
}

diesel::table! {
    backup_disks (id) {
        id -> BigInt,
        backup_id -> Text,
        disk_id -> Text,
        seq -> BigInt,
        virtual_size -> BigInt,
        chunk_size -> Integer,
        root_digest -> Binary,
        root_segment -> BigInt,
        bitmap_name -> Nullable<Text>,
        full_read -> Bool,
        read_bytes -> BigInt,
        new_bytes -> BigInt,
        stored_bytes -> BigInt,
        created_at -> Timestamp,
        full_reason -> Nullable<Text>,
    }
}

diesel::table! {
    segments (id) {
        id -> BigInt,
        project_id -> Text,
        status -> Text,
        size -> BigInt,
        chunk_count -> Integer,
        relocated_to -> Nullable<BigInt>,
        created_at -> Timestamp,
        condemned_at -> Nullable<Timestamp>,
        verified_at -> Nullable<Timestamp>,
        claimed_by -> Nullable<Text>,
        claim_until -> Nullable<Timestamp>,
        live_bytes -> Nullable<BigInt>,
        live_checked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    project_keys (project_id) {
        project_id -> Text,
        master_key_id -> Text,
        wrapped -> Text,
        created_at -> Timestamp,
        rotated_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    segment_refs (id) {
        id -> BigInt,
        disk_id -> Text,
        segment_id -> BigInt,
        from_seq -> BigInt,
        to_seq -> Nullable<BigInt>,
        refs -> BigInt,
    }
}

diesel::table! {
    bad_chunks (project_id, digest, segment_id) {
        project_id -> Text,
        digest -> Binary,
        segment_id -> BigInt,
        found_at -> Timestamp,
        repaired_segment -> Nullable<BigInt>,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        kind -> Text,
        project_id -> Text,
        backup_id -> Nullable<Text>,
        restore_id -> Nullable<Text>,
        host -> Nullable<Text>,
        status -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        payload -> Text,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        heartbeat_at -> Nullable<Timestamp>,
        deadline_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    restores (id) {
        id -> Text,
        project_id -> Text,
        user_id -> Text,
        backup_id -> Text,
        target -> Text,
        format -> Text,
        status -> Text,
        progress -> Integer,
        bytes_written -> BigInt,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        completed_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    exports (id) {
        id -> Text,
        project_id -> Text,
        user_id -> Text,
        backup_id -> Text,
        device -> Text,
        host -> Text,
        status -> Text,
        nbd_name -> Text,
        url -> Nullable<Text>,
        tls -> Bool,
        lifetime -> BigInt,
        expires_at -> Timestamp,
        active_at -> Nullable<Timestamp>,
        error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    pending_images (image_id) {
        image_id -> Text,
        restore_id -> Text,
        project_id -> Text,
        glance_url -> Text,
        user_token -> Text,
        finished_bytes -> Nullable<BigInt>,
        attempts -> Integer,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    quotas (project_id, resource) {
        project_id -> Text,
        resource -> Text,
        hard_limit -> BigInt,
    }
}

diesel::table! {
    replica_objects (store, project_id, name) {
        store -> Text,
        project_id -> Text,
        name -> Text,
        segment_id -> Nullable<BigInt>,
        size -> BigInt,
        copied_at -> Timestamp,
    }
}

diesel::table! {
    backup_replicas (backup_id, store) {
        backup_id -> Text,
        store -> Text,
        bytes_copied -> BigInt,
        copied_at -> Timestamp,
    }
}

diesel::table! {
    catalog_rebuilds (id) {
        id -> Integer,
        source -> Text,
        holder -> Text,
        started_at -> Timestamp,
    }
}

diesel::table! {
    leases (name) {
        name -> Text,
        holder -> Text,
        expires_at -> Timestamp,
    }
}

diesel::joinable!(disks -> instances (instance_id));
diesel::joinable!(backup_disks -> backups (backup_id));
diesel::joinable!(backup_disks -> disks (disk_id));
diesel::allow_tables_to_appear_in_same_query!(
    hosts,
    instances,
    disks,
    policies,
    policy_instances,
    schedule_runs,
    backups,
    backup_disks,
    segments,
    segment_refs,
    bad_chunks,
    project_keys,
    jobs,
    job_pins,
    restores,
    pending_images,
    quotas,
    exports,
    replica_objects,
    backup_replicas,
    catalog_rebuilds,
    leases,
);
