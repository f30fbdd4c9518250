# bash completion for lowsched; generated from its argument definitions (src/cli/completions.rs)
_lowsched() {
    local cur prev sub i
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    sub=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            daemon|submit|status|history|cancel|pause|resume|wait|stats|events|metrics|report|loadgen|simulate) sub=${COMP_WORDS[i]}; break ;;
            --) return ;;
        esac
    done
    case $sub in
        '') opts='--help --socket daemon submit status history cancel pause resume wait stats events metrics report loadgen simulate'; vals='--socket' ;;
        daemon) opts='--help --config --socket --state-dir --cgroup-root --relax --check-config'; vals='--config --socket --state-dir --cgroup-root' ;;
        submit) opts='--help -J --name --priority -c --cpus --memory --gpus --estimate --deadline --timeout -t --time --after --afterany --afterok --afternotok -d --dependency -a --array -o --stdout -e --stderr --cwd --env --user --class --avoid --not-beside-service --file --json'; vals='--name -J --priority --cpus -c --memory --gpus --estimate --deadline --timeout --time -t --after --afterany --afterok --afternotok --dependency -d --array -a --stdout -o --stderr -e --cwd --env --user --class --avoid --file' ;;
        status) opts='--help --json --state --user --name --format --noheader --parsable'; vals='--state --user --name --format' ;;
        history) opts='--help --json --state --user --name --format --noheader --parsable'; vals='--state --user --name --format' ;;
        cancel) opts='--help --state --user --name'; vals='--state --user --name' ;;
        pause) opts='--help --state --user --name'; vals='--state --user --name' ;;
        resume) opts='--help --state --user --name'; vals='--state --user --name' ;;
        wait) opts='--help'; vals='' ;;
        stats) opts='--help --json --hlog --since --until --state-dir'; vals='--hlog --since --until --state-dir' ;;
        events) opts='--help --follow --json'; vals='' ;;
        metrics) opts='--help'; vals='' ;;
        report) opts='--help --state-dir --events --history --since --until --out --slo-us'; vals='--state-dir --events --history --since --until --out --slo-us' ;;
        loadgen) opts='--help --server --duration --qps --qps-min --qps-max --qps-interval --seed --trace --connections --keys --key-size --value-size --set-ratio --preload --interval --tick-us --cpu --realtime --json --hlog'; vals='--server --duration --qps --qps-min --qps-max --qps-interval --seed --trace --connections --keys --key-size --value-size --set-ratio --interval --tick-us --cpu --hlog' ;;
        simulate) opts='--help --replay --thresholds --check --cores --seed'; vals='--replay --thresholds --cores --seed' ;;
    esac
    if [[ " $vals " == *" $prev "* ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -o default -F _lowsched lowsched
