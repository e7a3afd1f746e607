# A blank persistent data disk for the live ISO (or any KubeSolo OS machine) inside the
# `image` environment: a sparse raw disk, GPT with one partition, ext4 labelled KSOLODATA
# (with a journal, as the disk images' data partition), owned by root, empty.
#   DISK_MIB  the disk's size
# Identities come from $out (image-lib.sh); every timestamp is SOURCE_DATE_EPOCH.
. "$imagelib"
img=$out/data.img
mkdir -p "$out"
# The first MiB holds the GPT, the last one the backup GPT (rounded to keep alignment).
data_start=$MIB
data_size=$((DISK_MIB * MIB - 2 * MIB))
[ "$data_size" -gt $((16 * MIB)) ] || { echo "the data disk ($DISK_MIB MiB) is too small: DISK_MIB must be at least 18" >&2; exit 1; }
data_uuid=$(seed_uuid data-part) data_fs=$(seed_uuid data-fs)
truncate -s $((DISK_MIB * MIB)) "$img"
sfdisk -q --no-reread --no-tell-kernel "$img" <<TABLE
label: gpt
label-id: $(seed_uuid disk)
unit: sectors
first-lba: 2048
start=$((data_start / 512)), size=$((data_size / 512)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$data_uuid, name="KSOLODATA"
TABLE
ext4 "$img" "$data_start" "$data_size" KSOLODATA "$data_fs" yes
cat > "$out/partitions.txt" <<INFO
disk $(seed_uuid disk)
1 KSOLODATA part $data_uuid ext4 $data_fs offset $data_start size $data_size
INFO
echo "data disk: $DISK_MIB MiB apparent, $(du -k "$img" | cut -f1) KiB allocated"
